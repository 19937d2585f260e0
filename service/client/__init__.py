"""The statestream client SDK (async and sync) and the ``statestream client`` commands."""

from service.client.sdk import AsyncClient, AsyncSession, Client, StepFailed, SyncSession

__all__ = ["AsyncClient", "AsyncSession", "Client", "StepFailed", "SyncSession"]
