// Package dedupe records processed events so that at-least-once delivery
// gives an exactly-once effect.
//
// Status: being built.
package dedupe
