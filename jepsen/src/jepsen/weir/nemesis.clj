(ns jepsen.weir.nemesis
  "Faults for weir, from jepsen.nemesis.combined: partitions, kills (with
  lazyfs: losing unfsynced writes too), pauses and clock changes, on one
  node, a minority, a majority or all."
  (:require [jepsen.nemesis.combined :as nc]))

(defn package
  "A nemesis package for the options: :faults (a set of :partition :kill
  :pause :clock), :nemesis-interval (seconds between faults), :db."
  [opts]
  (nc/nemesis-package
    {:db       (:db opts)
     :nodes    (:nodes opts)
     :faults   (:faults opts #{:partition :kill :pause :clock})
     :interval (:nemesis-interval opts 10)
     :partition {:targets [:one :majority :majorities-ring]}
     :kill      {:targets [:one :majority :all]}
     :pause     {:targets [:one :majority]}}))
