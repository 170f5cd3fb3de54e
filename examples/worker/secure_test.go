package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/activekit/activekit/events/kafka"
	"github.com/activekit/activekit/internal/testenv"
)

// The worker reaches brokers that want SASL (SCRAM-SHA-256) and a Redis
// that wants an ACL user and password, and counts every order once; neither
// password appears in its logs or health answers. A client without the
// brokers' credentials is refused, so the counts prove the worker's own
// clients authenticated.
func TestSecureBackends(t *testing.T) {
	kuser, kpass := "worker", rand.Text()
	kf := testenv.KFake(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", kuser, kpass))
	brokers := kf.ListenAddrs()
	auth := kgo.SASL(scram.Auth{User: kuser, Pass: kpass}.AsSha256Mechanism())

	anon, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := kadm.NewClient(anon).ListTopics(t.Context()); err == nil {
		t.Fatal("kfake answered a client without credentials: the test would prove nothing")
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), auth)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	rdb := testenv.Redis(t)
	ruser, rpass := "ak-"+rand.Text()[:12], rand.Text()
	if err := rdb.Do(t.Context(), "ACL", "SETUSER", ruser, "on", ">"+rpass, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Do(context.Background(), "ACL", "DELUSER", ruser).Err() })

	name := testenv.Name(t)
	f := &fixture{kf: kf, brokers: brokers, adm: kadm.NewClient(cl), redisAddr: testenv.RedisAddr(t), rdb: rdb,
		prefix: name + ":", topic: name, group: name + "-g"}
	testenv.CleanupRedisPrefix(t, rdb, f.prefix)
	if _, err := kafka.CreateTopics(t.Context(), f.adm, kafka.TopicSpec{Partitions: 3}, f.topic, f.dlq(), f.counted()); err != nil {
		t.Fatalf("creating topics: %v", err)
	}

	env := f.env(t, "worker-secure")
	env["ACTIVEKIT_KAFKA_SASL"] = "scram-sha-256"
	env["ACTIVEKIT_KAFKA_USERNAME"] = kuser
	env["ACTIVEKIT_KAFKA_PASSWORD"] = kpass
	env["ACTIVEKIT_REDIS_USERNAME"] = ruser
	env["ACTIVEKIT_REDIS_PASSWORD"] = rpass
	in := runInstance(t, env)
	waitReady(t, in)

	es, want := orders(20, 4)
	p, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers, Topic: f.topic, ClientOpts: []kgo.Opt{auth}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Publish(t.Context(), es...); err != nil {
		t.Fatalf("publishing orders: %v", err)
	}
	f.waitCounted(t, want)

	clients, err := rdb.ClientList(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(clients, " user="+ruser+" ") {
		t.Errorf("no connection of Redis user %s: the worker did not use its credentials", ruser)
	}
	for _, path := range []string{"/readyz", "/livez"} {
		_, body := get(t, in.base+path)
		for _, pw := range []string{kpass, rpass} {
			if strings.Contains(string(body), pw) {
				t.Errorf("%s shows a password: %s", path, body)
			}
		}
	}
	if err := in.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	logs := in.log.text()
	for _, pw := range []string{kpass, rpass} {
		if strings.Contains(logs, pw) {
			t.Errorf("the logs hold a password")
		}
	}
}

// text returns every log line the sink has kept, as one string.
func (s *logSink) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, l := range s.lines {
		fmt.Fprintln(&b, l)
	}
	return b.String()
}
