"""One module per CLI command; each turns parsed arguments into engine calls and prints the outcome."""
