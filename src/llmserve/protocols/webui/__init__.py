"""The built-in web UI: a chat, a live dashboard and a playground, served at ``/``."""
