(ns jepsen.weir.client
  "jepsen.tests.kafka's client for weir: a Jepsen wrapper around weir.ops,
  which does the work over weir's HTTP gateway."
  (:require [jepsen [client :as client]]
            [weir.gateway :as g]
            [weir.ops :as ops]))

(defrecord Client [state]
  client/Client
  (open! [this test node]
    (assoc this :state (ops/open (g/node-url node ops/http-port))))

  (setup! [this test])

  (invoke! [this test op]
    (ops/invoke! state op))

  (teardown! [this test])

  (close! [this test]))

(defn client
  []
  (map->Client {}))
