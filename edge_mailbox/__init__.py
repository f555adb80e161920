"""edge-mailbox: run Airflow tasks on workers that reach only an object-store bucket."""

__version__ = "0.1.0"
