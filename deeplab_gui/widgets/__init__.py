"""The window and its parts: ``main_window``, ``canvas/`` (view, overlay, tools), ``panels/`` and
``dialogs/``.  Thin: they show state and turn events into calls on the state objects."""
