package consul

// StopHeartbeat stops the heartbeat without deregistering, as a crashed
// process would.
func (g *Registration) StopHeartbeat() {
	g.cancel()
	<-g.stopped
}

// Jitter is the heartbeat's jitter.
var Jitter = jitter
