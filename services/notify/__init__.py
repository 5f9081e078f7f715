"""Notify: tells customers (and channels) what happened to their orders, once per event."""
