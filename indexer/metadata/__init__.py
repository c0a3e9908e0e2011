"""The metadata database: SQLAlchemy tables (``tables``) and every query on them (``queries``)."""
