"""ibreports: Interactive Brokers statements, off IBKR's servers and into storage you own."""

__version__ = "0.1.0"
