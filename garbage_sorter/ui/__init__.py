"""The desktop app: the only package that imports PySide6.

``app.run()`` opens the window. Widgets (``window``, ``widgets``, ``dialogs``) only lay out,
connect and render; everything slow runs in workers (``inference``, ``camera``, ``training``,
``tasks``) that report through signals and stop cooperatively.
"""
