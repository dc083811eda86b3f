"""Dialogs: export, fine-tune (with its curve plot), unsaved work."""
