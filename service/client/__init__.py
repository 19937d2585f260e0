"""The statestream client SDK (async and sync) and the ``statestream client`` commands."""

from service.client.sdk import AsyncClient, AsyncSession, Client, SessionLost, StepFailed, SyncSession

__all__ = ["AsyncClient", "AsyncSession", "Client", "SessionLost", "StepFailed", "SyncSession"]
