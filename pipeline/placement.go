package pipeline

// DurableSep separates a stage's name from its host in a per-host durable
// consumer's name (e.g. "compressor__nas1").
const DurableSep = "__"

// Durable names the durable consumer of stage on host.
//
// Alone (not clustered), a stage's durable is its name, as it always was.
// In a cluster every host's consumers live in one stream, so:
//
//   - a stage whose work is host-local (it reads this host's hot tree or
//     its staging: scanner, compressor, interceptor, releaser, the store
//     stages while payloads do not travel between hosts) gets a durable
//     of its own per host, stage__host, filtered to its host's subjects:
//     no other host can take its messages;
//   - a shared stage (Stage.Shared: work any host can do) keeps one
//     durable, its name, that every host's instance pulls from: the work
//     is spread over the hosts, and a host going away leaves its
//     unacknowledged messages to the others after AckWait.
func Durable(stage, host string, clustered, shared bool) string {
	if !clustered || shared {
		return stage
	}
	return stage + DurableSep + host
}
