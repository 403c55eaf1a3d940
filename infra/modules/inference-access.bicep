// Roles of the orchestrator's identity on the inference resource group (RESOURCE_GROUP_NAME in
// infra/inference.config.json). The provision orchestration (activities/provisioning.py) creates or updates, in this
// group: a storage account + file share, a Log Analytics workspace, a managed environment with a GPU workload profile,
// the environment's Azure Files storage and the container app; the rollouts stage adapters on the share.
//
// Scope: the resource group, not the resources, because the orchestrator creates them at run time (they may not
// exist when this is deployed) and this template must not declare them. Contributor would work too; these five
// built-in roles are the narrower set that covers exactly the calls the code makes (see the table in
// tests/infra/test_infra_wiring.py).
targetScope = 'resourceGroup'

@description('Object id of the orchestrator\'s user-assigned identity.')
param principalId string

var roles = {
  // containerApps/* : create/patch the inference app, restart revisions, read replicas (activities/platform/aca.py).
  containerAppsContributor: '358470bc-b998-42bd-ab17-a7e34c199c0f'
  // managedEnvironments/* : create/patch the environment and its Azure Files storage (ensure_environment*).
  // Container Apps Contributor alone only reads and joins environments.
  containerAppsManagedEnvironmentsContributor: '57cc5028-e6a7-4284-868d-0611c5923f8d'
  // storageAccounts write, fileServices/shares write, listKeys/action (ensure_environment_storage lists the
  // account key: ACA's Azure Files storage takes only an account key), resourceGroups/read (default location).
  storageAccountContributor: '17d1049b-9a84-46fb-8f53-869881c3d3ab'
  // workspaces write + workspaces/sharedKeys/action (ensure_environment reads the shared key). Log Analytics Reader
  // excludes the shared keys and cannot create the workspace; this is the least built-in role that does both.
  logAnalyticsContributor: '92aaf0da-9dab-42b6-94a3-d43ce8d16293'
  // Azure Files data over OAuth with the backup intent (AzureFileShareTarget: staging adapters, manifest.json).
  storageFileDataPrivilegedContributor: '69566ab7-960f-475b-8e7c-b3118f30c6bd'
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in items(roles): {
  name: guid(resourceGroup().id, principalId, role.value)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.value)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

output roleDefinitionIds array = [for role in items(roles): role.value]
