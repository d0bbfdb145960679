package main

// Component registrations, replicated one by one from
// github.com/dapr/dapr/cmd/daprd/components/*.go (v1.18.3). Only what the
// AutoGLM Mesh apps use is linked in. To add a component, copy the init()
// body from the matching upstream file (e.g. state_postgres.go) here.

import (
	"github.com/dapr/components-contrib/bindings/cron"
	"github.com/dapr/components-contrib/conversation/openai"
	"github.com/dapr/components-contrib/nameresolution/mdns"
	nrSqlite "github.com/dapr/components-contrib/nameresolution/sqlite"
	pubsubRedis "github.com/dapr/components-contrib/pubsub/redis"
	"github.com/dapr/components-contrib/secretstores/hashicorp/vault"
	"github.com/dapr/components-contrib/secretstores/local/file"
	stateRedis "github.com/dapr/components-contrib/state/redis"

	bindingsLoader "github.com/dapr/dapr/pkg/components/bindings"
	conversationLoader "github.com/dapr/dapr/pkg/components/conversation"
	nrLoader "github.com/dapr/dapr/pkg/components/nameresolution"
	pubsubLoader "github.com/dapr/dapr/pkg/components/pubsub"
	secretstoresLoader "github.com/dapr/dapr/pkg/components/secretstores"
	stateLoader "github.com/dapr/dapr/pkg/components/state"
)

func init() {
	// state.redis (upstream: state_redis.go)
	stateLoader.DefaultRegistry.RegisterComponent(stateRedis.NewRedisStateStore, "redis")

	// pubsub.redis (upstream: pubsub_redis.go)
	pubsubLoader.DefaultRegistry.RegisterComponent(pubsubRedis.NewRedisStreams, "redis")

	// secretstores.hashicorp.vault (upstream: secretstores_hashicorp_vault.go)
	secretstoresLoader.DefaultRegistry.RegisterComponent(vault.NewHashiCorpVaultSecretStore, "hashicorp.vault")

	// secretstores.local.file (upstream: secretstores_local_file.go)
	secretstoresLoader.DefaultRegistry.RegisterComponent(file.NewLocalSecretStore, "local.file")

	// conversation.openai (upstream: conversation_openai.go)
	conversationLoader.DefaultRegistry.RegisterComponent(openai.NewOpenAI, "openai")

	// bindings.cron, input binding (upstream: bindings_cron.go)
	bindingsLoader.DefaultRegistry.RegisterInputBinding(cron.NewCron, "cron")

	// nameresolution.mdns (upstream: nameresolution_mdns.go). This is the
	// default resolver in self-hosted mode (pkg/runtime/runtime.go
	// initNameResolution); daprd fails to start without it unless a
	// Configuration selects another resolver.
	nrLoader.DefaultRegistry.RegisterComponent(mdns.NewResolver, "mdns")

	// nameresolution.sqlite (upstream: nameresolution_sqlite.go). Opt-in via a
	// Configuration (spec.nameResolution.component: sqlite, configuration:
	// connectionString: <file>). All sidecars on one host share the SQLite
	// file, so service invocation works without mDNS multicast traffic.
	nrLoader.DefaultRegistry.RegisterComponent(nrSqlite.NewResolver, "sqlite")
}
