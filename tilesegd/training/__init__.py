"""Training smp U-Nets, and exporting self-describing model files."""
