"""msir app package."""
