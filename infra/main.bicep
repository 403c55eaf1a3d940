// The orchestrator's own Azure resources: a Flex Consumption Functions app (Python 3.11) with a user-assigned
// managed identity, its storage account (deployment package, the `adapters` upload container, the Durable task
// hub), Application Insights on a Log Analytics workspace, a Key Vault holding the inference API key, a container
// registry for the GPU image with a separate image-pull identity for the inference container app, the Event Grid
// system topic that feeds the blob trigger, and the role assignments the orchestrator needs. No keys or connection
// strings: every connection is identity-based, and the registry allows neither anonymous pull nor an admin user.
// The Durable backend is a choice (durableBackend): the task hub in this storage account (AzureStorage, the default),
// or a Durable Task Scheduler with its task hub (DurableTaskScheduler), reached with the same identity.
//
// What this template does NOT declare: the inference resources (storage account + file share, Log Analytics
// workspace, managed environment, environment storage, container app). The orchestrator's provision orchestration
// creates and updates those at run time from infra/inference.config.json and infra/provision/inference.parameters.json
// (POST /api/apps/{app}/provision, `adapterctl provision APP`), so the two never write the same resource. This
// template only grants the orchestrator's identity roles on the inference resource group (modules/inference-access.bicep).
//
// Deploy: `azd up`, or `az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json ...`
// (see docs/deploy.md). Second pass, once the code is published: enableBlobEvents=true (modules/blob-events.bicep
// reads the blob extension's system key, which exists only after the host has started with the blob trigger).
targetScope = 'resourceGroup'

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); seeds the resource names.')
param environmentName string

@description('Region of the orchestrator\'s resources. Flex Consumption must be available there.')
param location string = resourceGroup().location

@description('Object id of the person deploying (azd: AZURE_PRINCIPAL_ID): may upload adapters with `adapterctl deploy --account-url`. Empty: no assignment.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Object id of the GitHub Actions OIDC service principal that pushes the inference image (AcrPush). Empty: no assignment.')
param githubPrincipalId string = ''

@description('Base model the adapters are trained on (BASE_MODEL_NAME): adapters naming another base are refused.')
param baseModelName string = 'microsoft/Phi-3-mini-4k-instruct'

@description('The base model\'s folder as the inference container sees it (MODEL_PATH): the file share is mounted at /mnt/adapters.')
param modelPath string = '/mnt/adapters/models/base'

@description('GPU workload profile of the inference container (GPU_WORKLOAD_PROFILE): a Consumption-GPU-* type.')
param gpuWorkloadProfile string = 'Consumption-GPU-NC8as-T4'

@description('Where the inference app runs (INFERENCE_TARGET): gpu (SGLang image on gpuWorkloadProfile) or cpu (the image\'s cpu target, transformers engine, on the Consumption profile: a small model for a development endpoint).')
@allowed([
  'gpu'
  'cpu'
])
param inferenceTarget string = 'gpu'

@minValue(1)
param maxLoraRank int = 64

@description('Comma-separated LoRA target modules the adapters may use (ALLOWED_TARGET_MODULES).')
param allowedTargetModules string = 'q_proj,k_proj,v_proj,o_proj,qkv_proj,gate_proj,up_proj,down_proj,gate_up_proj'

@minValue(1)
param maxAdapterMb int = 512

@description('Durable Functions task hub (DURABLE_TASK_HUB; host.json reads %DURABLE_TASK_HUB%). With the Durable Task Scheduler it also names the taskHubs resource (3-64 letters, digits, \'-\').')
param durableTaskHub string = 'adapterdeploy'

@allowed([
  'AzureStorage'
  'DurableTaskScheduler'
])
@description('Durable Functions backend. AzureStorage: queues, tables and blobs in this template\'s storage account, as host.json says. DurableTaskScheduler: a Microsoft.DurableTask scheduler + task hub, which app settings switch host.json\'s storageProvider to. Switching starts an empty task hub (no history moves).')
param durableBackend string = 'AzureStorage'

@allowed([
  'Consumption'
  'Dedicated'
])
@description('Durable Task Scheduler SKU (durableBackend DurableTaskScheduler only).')
param durableTaskSchedulerSku string = 'Consumption'

@description('Tag of the inference image in this template\'s registry: INFERENCE_IMAGE = <registry>/inference:<tag>.')
param inferenceImageTag string = 'latest'

@secure()
@minLength(16)
@description('API key of the inference server (stored in Key Vault; the app reads it as INFERENCE_API_KEY).')
param inferenceApiKey string

@description('Second pass only: subscribe the blob trigger to Event Grid. Needs the code published first (the blobs_extension key).')
param enableBlobEvents bool = false

@minValue(40)
@maxValue(1000)
param functionsMaximumInstanceCount int = 40

// --- names -------------------------------------------------------------------------------------------------------
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  app: 'adapter-deploy'
}
var functionAppName = 'func-adapters-${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'
// The blob trigger's path is adapters/{app}/{adapter}/_COMPLETE (orchestrations/starters.py): keep these together.
var adaptersContainerName = 'adapters'
var blobTriggerFunctionName = 'on_adapter_uploaded'
var useDurableTaskScheduler = durableBackend == 'DurableTaskScheduler'
// The Durable extension's default connection name for the scheduler (a connection string, never a secret here:
// Authentication=ManagedIdentity with the identity's client id).
var durableTaskSchedulerConnectionName = 'DURABLE_TASK_SCHEDULER_CONNECTION_STRING'

// The inference resources, read from the AI Toolkit template's files (names only: the orchestrator owns them).
// A null parameter means "the fine-tuning resource named in inference.config.json", as activities/provisioning.py does.
var inferenceConfig = loadJsonContent('inference.config.json')
var inferenceParameters = loadJsonContent('provision/inference.parameters.json').parameters
var inferenceSubscriptionId = inferenceConfig.SUBSCRIPTION_ID
var inferenceResourceGroupName = inferenceConfig.RESOURCE_GROUP_NAME
var inferenceStorageAccountName = inferenceParameters.storageAccountName.value ?? inferenceConfig.STORAGE_ACCOUNT_NAME
var inferenceFileShareName = inferenceParameters.fileShareName.value ?? inferenceConfig.FILE_SHARE_NAME

// Built-in role definition ids (tests/infra/test_infra_wiring.py holds the table: role -> id -> why).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  acrPush: '8311e382-0749-4cb8-b61a-304f252e45ec'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  managedIdentityOperator: 'f1a07417-d97a-45cb-824c-7a7467783830'
  durableTaskDataContributor: '0ad04412-c4d5-4796-b79c-f76d14c8d402'
}

// --- identity ----------------------------------------------------------------------------------------------------
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-adapters-${resourceToken}'
  location: location
  tags: tags
}

// The inference container app pulls its image with this identity and nothing else: AcrPull on the registry is its
// only role, and the orchestrator sets it to lifecycle "None" on the app (image pull only, no tokens for the
// container's code). Not the Functions identity: that one can rewrite container apps and read the API key, and
// would be reachable from the GPU container's code if the app carried it.
resource pullIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-adapters-pull-${resourceToken}'
  location: location
  tags: tags
}

// --- monitoring --------------------------------------------------------------------------------------------------
resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-adapters-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-adapters-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true // telemetry is sent with the identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING)
  }
}

// --- storage: deployment package, adapter uploads, Durable task hub ----------------------------------------------
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stadapters${take(resourceToken, 14)}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // identity only: no account key can be used against this account
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled' // Flex Consumption without a VNet, Event Grid and adapterctl reach it publicly
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource adaptersContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: adaptersContainerName
  properties: {
    publicAccess: 'None'
  }
}

// --- Key Vault: the inference API key ------------------------------------------------------------------------------
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-adapt-${take(resourceToken, 13)}'
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

resource apiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'inference-api-key'
  properties: {
    value: inferenceApiKey
    contentType: 'text/plain'
  }
}

// --- container registry for the GPU inference image ------------------------------------------------------------
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'cradapters${take(resourceToken, 13)}'
  location: location
  tags: tags
  sku: {
    name: 'Standard' // 100 GiB included storage for the multi-GB CUDA images and their tags
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false // the container app pulls with pullIdentity (AcrPull)
  }
}

// --- Durable Task Scheduler (durableBackend DurableTaskScheduler) --------------------------------------------------
// Microsoft.DurableTask 2025-11-01 (stable): ipAllowlist and sku are required. The Functions app on Flex Consumption
// without a VNet has no fixed outbound address, so the allow list is open and access rests on Entra auth (the role
// below); an empty list would refuse every caller.
resource scheduler 'Microsoft.DurableTask/schedulers@2025-11-01' = if (useDurableTaskScheduler) {
  name: 'dts-adapters-${resourceToken}'
  location: location
  tags: tags
  properties: {
    ipAllowlist: [
      '0.0.0.0/0'
    ]
    sku: {
      name: durableTaskSchedulerSku
    }
  }
}

resource taskHub 'Microsoft.DurableTask/schedulers/taskHubs@2025-11-01' = if (useDurableTaskScheduler) {
  parent: scheduler
  name: durableTaskHub
}

// The Durable app settings for the scheduler. host.json names the Azure Storage provider; these settings override its
// storageProvider (AzureFunctionsJobHost__<path> app settings override host.json values), so one host.json serves both
// backends. connectionName is overridden too: the extension reads connectionName before connectionStringName, and
// host.json's connectionName is AzureWebJobsStorage. The hub name stays host.json's %DURABLE_TASK_HUB%.
var durableTaskSchedulerSettings = useDurableTaskScheduler ? {
  AzureFunctionsJobHost__extensions__durableTask__storageProvider__type: 'azureManaged'
  AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionName: durableTaskSchedulerConnectionName
  AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionStringName: durableTaskSchedulerConnectionName
  DURABLE_TASK_SCHEDULER_CONNECTION_STRING: 'Endpoint=${scheduler.properties.endpoint};Authentication=ManagedIdentity;ClientID=${identity.properties.clientId}'
} : {}

// --- the Functions app (Flex Consumption) -------------------------------------------------------------------------
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-adapters-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true // Linux
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: union(tags, {
    'azd-service-name': 'orchestrator'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id // resolve @Microsoft.KeyVault(...) with the user-assigned identity
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer.name}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: functionsMaximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// App settings: every setting the code reads in Azure (activities/config.py Settings.from_env,
// activities/adapter_store.py BlobStoreSettings/ShareSettings.from_env, host.json, orchestrations/starters.py).
// Written after the role assignments so the Key Vault reference and the identity connections resolve at first start.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: union({
    // Functions host storage + Durable task hub (host.json: connectionName AzureWebJobsStorage), identity-based.
    AzureWebJobsStorage__accountName: storage.name
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identity.properties.clientId
    DURABLE_TASK_HUB: durableTaskHub
    // The blob trigger's connection (orchestrations/starters.py: connection="AdaptersStorage"), identity-based.
    AdaptersStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
    AdaptersStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
    AdaptersStorage__credential: 'managedidentity'
    AdaptersStorage__clientId: identity.properties.clientId
    // Telemetry with Entra auth (the connection string carries no credential once local auth is disabled).
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
    // DefaultAzureCredential picks the user-assigned identity (ARM, blobs, Azure Files).
    AZURE_CLIENT_ID: identity.properties.clientId
    // The orchestrator (activities/config.py Settings.from_env).
    PLATFORM: 'aca'
    INFERENCE_IMAGE: '${registry.properties.loginServer}/inference:${inferenceImageTag}'
    // The container app pulls INFERENCE_IMAGE from this registry with this identity (activities/platform/aca.py).
    INFERENCE_REGISTRY_SERVER: registry.properties.loginServer
    INFERENCE_PULL_IDENTITY_ID: pullIdentity.id
    BASE_MODEL_NAME: baseModelName
    MODEL_PATH: modelPath
    INFERENCE_TARGET: inferenceTarget
    GPU_WORKLOAD_PROFILE: gpuWorkloadProfile
    MAX_LORA_RANK: string(maxLoraRank)
    ALLOWED_TARGET_MODULES: allowedTargetModules
    MAX_ADAPTER_MB: string(maxAdapterMb)
    ADAPTERS_CONTAINER: adaptersContainerName
    ADAPTERS_ACCOUNT_URL: storage.properties.primaryEndpoints.blob
    // BlobStoreSettings.from_env spells the container setting without the S.
    INFERENCE_API_KEY: '@Microsoft.KeyVault(SecretUri=${apiKeySecret.properties.secretUri})'
    // The AI Toolkit template's files, shipped in the package (paths relative to the app root).
    INFERENCE_CONFIG_PATH: 'infra/inference.config.json'
    INFERENCE_PARAMETERS_PATH: 'infra/provision/inference.parameters.json'
    // The staging share (ShareSettings.from_env): the same names the provision orchestration resolves.
    STORAGE_ACCOUNT_NAME: inferenceStorageAccountName
    FILE_SHARE_NAME: inferenceFileShareName
  }, durableTaskSchedulerSettings)
  dependsOn: [
    storageBlobOwner
    storageQueueContributor
    storageTableContributor
    vaultSecretsUser
    metricsPublisher
    registryPull
    pullIdentityOperator
    inferenceAccess
    taskHubDataContributor
  ]
}

// --- role assignments on this template's resources -----------------------------------------------------------------
// Functions host, deployment package, Durable blobs/leases, blob trigger receipts, adapter reads.
resource storageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Durable work-item/control queues and the blob trigger's poison queue.
resource storageQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Durable history and instances tables (the Azure Storage backend; unused by Durable with the scheduler).
resource storageTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Read the one secret the app references (scoped to the secret, not the vault).
resource vaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(apiKeySecret.id, identity.id, roles.keyVaultSecretsUser)
  scope: apiKeySecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Send telemetry to Application Insights with Entra auth (local auth is disabled).
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The person deploying uploads adapters (`adapterctl deploy --account-url`): write access to the adapters container only.
resource uploaderBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(adaptersContainer.id, principalId, roles.storageBlobDataContributor)
  scope: adaptersContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: principalType
  }
}

// GitHub Actions (OIDC) pushes the inference image.
resource githubAcrPush 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubPrincipalId)) {
  name: guid(registry.id, githubPrincipalId, roles.acrPush)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPush)
    principalId: githubPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The pull identity reads images from the registry, and nothing else.
resource registryPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, pullIdentity.id, roles.acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
    principalId: pullIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The orchestrator assigns the pull identity to the container app it writes
// (Microsoft.ManagedIdentity/userAssignedIdentities/assign/action), scoped to that one identity.
resource pullIdentityOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(pullIdentity.id, identity.id, roles.managedIdentityOperator)
  scope: pullIdentity
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.managedIdentityOperator)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The Durable extension dispatches and records orchestrations in the scheduler's task hub (scoped to that hub).
resource taskHubDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (useDurableTaskScheduler) {
  name: guid(taskHub.id, identity.id, roles.durableTaskDataContributor)
  scope: taskHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.durableTaskDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// --- roles on the inference resource group (what the provision orchestration creates there) -----------------------
module inferenceAccess 'modules/inference-access.bicep' = {
  name: 'inference-access-${resourceToken}'
  scope: resourceGroup(inferenceSubscriptionId, inferenceResourceGroupName)
  params: {
    principalId: identity.properties.principalId
  }
}

// --- Event Grid: BlobCreated on adapters/<app>/<adapter>/_COMPLETE -> the blob trigger -----------------------------
resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'evgt-adapters-${resourceToken}'
  location: location
  tags: tags
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

module blobEvents 'modules/blob-events.bicep' = if (enableBlobEvents) {
  name: 'blob-events-${resourceToken}'
  params: {
    systemTopicName: systemTopic.name
    functionAppName: functionApp.name
    functionName: blobTriggerFunctionName
    containerName: adaptersContainerName
  }
  dependsOn: [
    appSettings
  ]
}

// --- outputs (azd writes them to the environment's .env) ----------------------------------------------------------
output AZURE_LOCATION string = location
output AZURE_FUNCTION_APP_NAME string = functionApp.name
output ADAPTERCTL_URL string = 'https://${functionApp.properties.defaultHostName}'
output ADAPTERS_ACCOUNT_URL string = storage.properties.primaryEndpoints.blob
output AZURE_CONTAINER_REGISTRY_NAME string = registry.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.properties.loginServer
output INFERENCE_IMAGE string = '${registry.properties.loginServer}/inference:${inferenceImageTag}'
output INFERENCE_PULL_IDENTITY_ID string = pullIdentity.id
output AZURE_KEY_VAULT_NAME string = vault.name
output ORCHESTRATOR_IDENTITY_CLIENT_ID string = identity.properties.clientId
output ORCHESTRATOR_IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output INFERENCE_RESOURCE_GROUP string = inferenceResourceGroupName
output INFERENCE_STORAGE_ACCOUNT string = inferenceStorageAccountName
output INFERENCE_FILE_SHARE string = inferenceFileShareName
