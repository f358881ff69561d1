"""Root key material: master keys, the blind-index key and the service's signing keys."""
