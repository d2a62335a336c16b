"""Metabase: the dashboard definition and its provisioning script (``provision.py``)."""
