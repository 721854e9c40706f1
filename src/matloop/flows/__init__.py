"""flows: the Prefect wiring of the loop (flows, tasks, artifacts, deployments)."""

import matloop.flows.secrets  # noqa: F401  registers ${prefect-secret:…}
