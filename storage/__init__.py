"""Generation history: SQLite (or any SQLAlchemy URL) for rows, the data folder for images."""

from .errors import StorageError
from .store import HistoryFilter, HistoryStore, NewGeneration, NewImage, Page

__all__ = ["HistoryFilter", "HistoryStore", "NewGeneration", "NewImage", "Page", "StorageError"]
