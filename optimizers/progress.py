"""How the optimizer reports what it is doing (the CLI shows it as rich progress bars)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def phase(self, description: str, total: int | None = None) -> None: ...
    def status(self, text: str) -> None: ...
    def advance(self) -> None: ...


class Silent:
    def phase(self, description: str, total: int | None = None) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def advance(self) -> None:
        pass
