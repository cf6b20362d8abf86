"""Importers from other equivariant libraries (each imports its library only when called)."""
