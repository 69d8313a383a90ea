(ns jepsen.weir.nemesis
  "Faults for weir: jepsen.nemesis.combined's partitions, kills (with
  lazyfs: losing unfsynced writes too), pauses and node clock changes, on
  one node, a minority, a majority or all; and :broker-clock, one broker's
  wall clock stepped under libfaketime (weir.clock), its node's clock and
  etcd member untouched, put back at the next operation."
  (:require [jepsen [control :as c]
                    [generator :as gen]
                    [nemesis :as n]]
            [jepsen.nemesis.combined :as nc]
            [jepsen.weir.db :as db]
            [weir.clock :as clock]))

(defn broker-clock-nemesis
  "Steps brokers' clocks (:skew-broker-clock, {node seconds}) and puts
  every one back (:reset-broker-clock)."
  []
  (reify n/Nemesis
    (setup! [this test] this)
    (invoke! [this test op]
      (case (:f op)
        :skew-broker-clock
        (let [steps (:value op)]
          (c/on-nodes test (keys steps) (fn [_ node] (db/set-broker-clock! (get steps node))))
          op)
        :reset-broker-clock
        (do (c/on-nodes test (fn [_ _] (db/set-broker-clock! 0)))
            op)))
    (teardown! [this test]
      (c/on-nodes test (fn [_ _] (db/set-broker-clock! 0))))

    n/Reflection
    (fs [this] #{:skew-broker-clock :reset-broker-clock})))

(defn broker-clock-package
  "The :broker-clock fault as a combined-nemesis package: a step, then the
  clocks back, each after the interval."
  [opts]
  (when (contains? (:faults opts) :broker-clock)
    (let [rnd  (java.util.Random.)
          skew (fn [test _] (clock/skew-op rnd (:nodes test)))]
      {:generator       (->> (gen/flip-flop skew (repeat clock/reset-op))
                             (gen/delay (:interval opts)))
       :final-generator (gen/once clock/reset-op)
       :nemesis         (broker-clock-nemesis)
       :perf            #{{:name       "broker clock"
                           :start      #{:skew-broker-clock}
                           :stop       #{:reset-broker-clock}
                           :fill-color "#A0C8E9"}}})))

(defn package
  "A nemesis package for the options: :faults (a set of :partition :kill
  :pause :clock :broker-clock), :nemesis-interval (seconds between
  faults), :db."
  [opts]
  (let [faults   (set (:faults opts #{:partition :kill :pause :clock}))
        interval (:nemesis-interval opts 10)]
    (nc/compose-packages
      (remove nil?
              (conj (nc/nemesis-packages
                      {:db        (:db opts)
                       :nodes     (:nodes opts)
                       :faults    (disj faults :broker-clock)
                       :interval  interval
                       :partition {:targets [:one :majority :majorities-ring]}
                       :kill      {:targets [:one :majority :all]}
                       :pause     {:targets [:one :majority]}})
                    (broker-clock-package {:faults faults :interval interval}))))))
