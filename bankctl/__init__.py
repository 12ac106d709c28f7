"""bankctl package."""
