(ns jepsen.weir.cli
  "Runs the weir Jepsen test:

    lein run test --nodes n1,n2,n3 --weir-binary ../target/release/weir \\
      --time-limit 300 --nemesis partition,kill,pause"
  (:require [clojure.string :as str]
            [jepsen [checker :as checker]
                    [cli :as cli]
                    [generator :as gen]
                    [tests :as tests]]
            [jepsen.os.debian :as debian]
            [jepsen.weir [db :as db]
                         [nemesis :as nemesis]
                         [workload :as workload]]))

(defn weir-test
  [opts]
  (let [db       (db/db opts)
        workload (workload/workload opts)
        package  (nemesis/package (assoc opts :db db :faults (:nemesis opts)))]
    (merge tests/noop-test
           opts
           {:name      (str "weir " (str/join "," (map name (:nemesis opts))))
            :os        debian/os
            :db        db
            :client    (:client workload)
            :nemesis   (:nemesis package)
            :checker   (checker/compose {:perf       (checker/perf {:nemeses (:perf package)})
                                         :stats      (checker/stats)
                                         :exceptions (checker/unhandled-exceptions)
                                         :workload   (:checker workload)})
            :generator (gen/phases
                         (->> (:generator workload)
                              (gen/stagger (/ (:rate opts)))
                              (gen/nemesis (:generator package))
                              (gen/time-limit (:time-limit opts)))
                         (gen/nemesis (:final-generator package))
                         (gen/log "Healed; final polls")
                         (gen/sleep 10)
                         (gen/clients (:final-generator workload)))})))

(def cli-opts
  [[nil "--weir-binary PATH" "The weir binary to install on the nodes."
    :default "../target/release/weir"]
   [nil "--rate HZ" "Operations per second, across all clients."
    :default 100 :parse-fn parse-double]
   [nil "--nemesis FAULTS" "Comma-separated faults: partition, kill, pause, clock (the node's), broker-clock (the broker's alone, libfaketime)."
    :default #{:partition :kill :pause}
    :parse-fn (fn [s] (set (map keyword (str/split s #","))))]
   [nil "--nemesis-interval SECONDS" "Seconds between faults."
    :default 10 :parse-fn parse-long]
   [nil "--lazyfs" "Mount the data directory on lazyfs: a kill also loses writes never fsynced."]
   [nil "--key-count N" "Keys (topics) written at once." :default 8 :parse-fn parse-long]
   [nil "--max-writes-per-key N" "Writes to a key before moving on." :default 256 :parse-fn parse-long]])

(defn -main
  [& args]
  (cli/run! (merge (cli/single-test-cmd {:test-fn weir-test :opt-spec cli-opts})
                   (cli/serve-cmd))
            args))
