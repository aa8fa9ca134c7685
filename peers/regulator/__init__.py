"""The bundled provincial regulatory platform (CONTRACT section 6, receiving side)."""
