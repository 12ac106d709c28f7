"""auth_zkp package."""
