package kafka_test

import (
	"context"
	"fmt"
	"time"

	"github.com/activekit/activekit/events"
	"github.com/activekit/activekit/events/kafka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Example publishes an event and consumes it in a consumer group, on an
// in-process kfake cluster standing in for Kafka.
func Example() {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		panic(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Create the topic and its dead-letter topic durably, and check them.
	admin, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		panic(err)
	}
	defer admin.Close()
	report, err := kafka.CreateTopics(ctx, kadm.NewClient(admin), kafka.TopicSpec{Partitions: 3}, "orders", "orders.dlq")
	if err != nil {
		panic(err)
	}
	fmt.Println("durable:", report.OK())

	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Brokers: brokers, Topic: "orders"})
	if err != nil {
		panic(err)
	}
	defer pub.Close()
	e := events.New("/orders-service", "com.example.order.created", []byte(`{"total":42}`))
	e.Subject = "order-1001" // the record key: this order's events stay in order
	if err := pub.Publish(ctx, e); err != nil {
		panic(err) // on events.ErrUncertain, publishing again is safe
	}

	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Brokers: brokers, Group: "billing"})
	if err != nil {
		panic(err)
	}
	subCtx, stop := context.WithCancel(ctx)
	err = sub.Subscribe(subCtx, "orders", func(ctx context.Context, got events.Event) error {
		fmt.Println("got", got.Type, got.Subject, string(got.Data))
		stop() // one is enough for the example
		return nil
	})
	fmt.Println("subscribe returned", err)
	// Output:
	// durable: true
	// got com.example.order.created order-1001 {"total":42}
	// subscribe returned <nil>
}

// ExampleDecode reads a record another producer (a CloudEvents SDK in
// structured mode) wrote: the content-type header says the value is the
// whole event in the JSON event format.
func ExampleDecode() {
	r := &kgo.Record{
		Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/cloudevents+json; charset=utf-8")}},
		Value: []byte(`{"specversion": "1.0", "id": "A234-1234-1234", "source": "/orders", "type": "com.example.order.created",
			"time": "2018-04-05T17:31:00Z", "priority": 5, "datacontenttype": "application/json", "data": {"order": 7}}`),
	}
	e, err := kafka.Decode(r)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(e.ID, e.Type, e.Time.Format(time.RFC3339))
	fmt.Println(e.Extension("priority"), e.DataContentType, string(e.Data))

	// The JSON batch format is not allowed on Kafka.
	r.Headers[0].Value = []byte("application/cloudevents-batch+json")
	_, err = kafka.Decode(r)
	fmt.Println(err)
	// Output:
	// A234-1234-1234 com.example.order.created 2018-04-05T17:31:00Z
	// 5 application/json {"order": 7}
	// kafka: malformed record: header "content-type": the JSON batch format (application/cloudevents-batch+json) is not allowed on Kafka: the binding carries one event per record
}
