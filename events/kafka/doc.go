// Package kafka is the events adapter for Apache Kafka on franz-go.
//
// Status: being built.
package kafka
