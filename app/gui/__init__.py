"""The PySide6 desktop app: views, widgets and workers. Every number shown comes from engine/ or trainer/."""
