"""The orchestrator's Functions app: builds the Durable app and registers one blueprint per concern."""

import azure.durable_functions as df
import azure.functions as func

from activities.functions import bp as activities
from activities.progressive_functions import bp as progressive_activities
from orchestrations.dashboard import bp as dashboard
from orchestrations.health_gate import bp as health_gate
from orchestrations.lifecycle import bp as lifecycle
from orchestrations.progressive_api import bp as progressive_api
from orchestrations.provision import bp as provisioning
from orchestrations.reconcile import bp as reconciling
from orchestrations.rollout import bp as rollouts
from orchestrations.starters import bp as starters
from orchestrations.status_api import bp as status_api
from orchestrations.uploads import bp as uploads

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (rollouts, reconciling, provisioning, health_gate, starters, status_api, lifecycle, dashboard, uploads,
                  progressive_api, activities, progressive_activities):
    app.register_functions(blueprint)
