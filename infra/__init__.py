"""Runtime plumbing: settings, logging, database and Kafka adapters, migrations,
the embedded runtime and the ``flowmetrics`` command line."""
