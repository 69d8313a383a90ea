(ns jepsen.weir.workload
  "jepsen.tests.kafka's queue workload against weir: sends, polls, assigns
  and subscribes (consumer groups, through the gateway's consumer
  instances), checked by its own checker (lost writes, duplicates,
  inconsistent offsets, nonmonotonic polls and sends, poll skips, unseen
  values)."
  (:require [jepsen [generator :as gen]]
            [jepsen.tests.kafka :as k]
            [jepsen.weir.client :as client]))

(defn- supported?
  "weir has no topic-partition debugging call."
  [op]
  (not= :debug-topic-partitions (:f op)))

(defn workload
  [opts]
  (-> (k/workload (assoc opts
                         :txn?    false
                         :sub-via #{:assign :subscribe}))
      (assoc :client (client/client))
      (update :generator (partial gen/filter supported?))
      (update :final-generator (partial gen/filter supported?))))
