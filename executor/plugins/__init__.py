"""The fleet dashboard: an Airflow plugin on the api-server (page, JSON API, nav entries)."""
