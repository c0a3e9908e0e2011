"""Following the database's change feed: every process's index copy catches up with other writers."""
