"""The app's state: QObjects without widgets that own the data, the background work and what is
persisted (session, task runner, saving, prefetch, settings, live CRF, models).  Widgets bind to them."""
