"""Krea 2 Studio's application layer: settings, the service the UI and the API call, history recording, the CLI.

It joins the engine (`krea2/`) and the history (`storage/`), which know nothing of each other; `ui/` (Gradio) sits
on top of it.
"""
