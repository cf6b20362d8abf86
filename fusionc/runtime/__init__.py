"""The runtime: loading compiled modules and the helpers generated code calls (needs torch)."""
