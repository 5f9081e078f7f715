"""Intake: every order from every channel gets exactly one answer."""
