"""twistd plugin declaration for ``twistd foreman``.

Imported on every plugin scan, so it stays import-light: the real work is in
``foreman.app.tap``, loaded only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

foreman = ServiceMaker(
    "foreman",
    "foreman.app.tap",
    "Queued, observable Ollama/OpenAI-compatible front and durable job service",
    "foreman",
)
