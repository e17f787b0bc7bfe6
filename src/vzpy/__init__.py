"""vzpy: OpenVZ's vzctl/vzlist/vzmigrate on a stock Linux kernel."""

__version__ = "0.1.0"
