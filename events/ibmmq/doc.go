// Package ibmmq is the events adapter for IBM MQ on mq-golang v5.
//
// Status: not started.
package ibmmq
