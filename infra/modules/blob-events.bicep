// The Event Grid subscription that feeds the blob trigger `on_adapter_uploaded` (source=EventGrid,
// path adapters/{app}/{adapter}/_COMPLETE). Deployed in a second pass (main.bicep: enableBlobEvents=true) because the
// webhook needs the host's `blobs_extension` system key, which the Functions host creates when it first starts with an
// Event Grid blob trigger, i.e. after the code is published. Creating the subscription also makes Event Grid validate
// the webhook, which only the running app answers.
targetScope = 'resourceGroup'

param systemTopicName string
param functionAppName string
@description('The blob trigger\'s function name (the Python function name in orchestrations/starters.py).')
param functionName string
param containerName string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource hostKeys 'Microsoft.Web/sites/host@2024-04-01' existing = {
  parent: functionApp
  name: 'default'
}

var blobsExtensionKey = hostKeys.listKeys().systemKeys.blobs_extension
var webhookUrl = 'https://${functionApp.properties.defaultHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${functionName}&code=${blobsExtensionKey}'

resource adapterCompleted 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'adapter-complete-to-${replace(functionName, '_', '-')}' // letters, digits and hyphens only
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: webhookUrl
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      // Only completion markers: the uploader writes _COMPLETE last (activities/adapter_store.py).
      subjectBeginsWith: '/blobServices/default/containers/${containerName}/'
      subjectEndsWith: '/_COMPLETE'
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}
