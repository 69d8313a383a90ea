(ns weir.jepsen-check
  "Runs Jepsen's own queue checker, `jepsen.tests.kafka/checker` (Elle
  inside), on EDN histories that weir's simulator exports: one op map per
  line, e.g.

    {:index 0, :time 111884853, :type :invoke, :process 50, :f :send,
     :value [[:send 2 50000000000]]}

  Each history is read, made into a `jepsen.history` (its :index kept; ops
  without :index get dense ones), and checked with
  `(jepsen.checker/check (jepsen.tests.kafka/checker) test history {})`.
  Jepsen's verdict is printed as one line and written in full, as plain EDN,
  to HISTORY.jepsen.edn; the checker's own files (per-key order SVGs,
  consume-counts.edn, jepsen.log, and with --plots its gnuplot plots) go to
  HISTORY.jepsen.d/.

  Needs Jepsen 0.3.x on the classpath: run it through jepsen/check-history,
  which builds that classpath. Not loaded in CI (Jepsen is absent there).

    check-history --jepsen PATH [--deps DIR] [options] HISTORY.edn...

  Options (passed through by check-history):

    --sub-via S     the test's :sub-via, comma-separated. Default: from
                    the history, assign,subscribe if it has a :subscribe
                    op, else assign. With subscribe, Jepsen allows
                    :poll-skip and :nonmonotonic-poll; the simulator's
                    HISTORY.assigned.edn (no subscribers) is held to both.
    --ww-deps       the test's :ww-deps (write-write edges from offsets)
    --all-errors    the test's :all-errors (no truncation of error lists)
    --drop-f F,...  leave ops with these :f out before checking (e.g.
                    commit); default: keep every op as exported
    --plots         let the checker call gnuplot for its unseen and
                    realtime-lag plots; without it those two plotting calls
                    are skipped (they need a gnuplot binary and only draw
                    PNGs; the verdict does not depend on them)

  Exit status: 0 if every history is valid, 1 if any is invalid, 2 if none
  is invalid but some could not be checked (:valid? :unknown)."
  (:require [clojure.edn :as edn]
            [clojure.java.io :as io]
            [clojure.pprint :refer [pprint]]
            [clojure.string :as str]
            [clojure.walk :as walk]
            [jepsen.checker :as checker]
            [jepsen.history :as h]
            [jepsen.store :as store]
            [jepsen.tests.kafka :as kafka]
            [unilog.config :as unilog])
  (:import (java.io File PushbackReader)
           (java.util.zip GZIPInputStream)
           (java.util.concurrent ExecutionException)))

;; Reading

(defn read-ops
  "Reads every EDN form of a history file, gzipped if its name ends in .gz
  (one op map per line, but any layout of forms reads). Throws ex-info with the form number on a bad one."
  [file]
  (with-open [r (PushbackReader.
                  (io/reader
                    (if (str/ends-with? (str file) ".gz")
                      (GZIPInputStream. (io/input-stream file))
                      file)))]
    (loop [ops []]
      (let [op (try (edn/read {:eof ::eof} r)
                    (catch Exception e
                      (throw (ex-info (str file ": form " (inc (count ops))
                                           ": " (.getMessage e))
                                      {:type ::unreadable
                                       :file (str file)
                                       :form (inc (count ops))}
                                      e))))]
        (cond (= ::eof op) ops
              (map? op)    (recur (conj ops op))
              :else        (throw (ex-info (str file ": form " (inc (count ops))
                                                " is not a map")
                                           {:type ::not-a-map
                                            :file (str file)
                                            :form op})))))))

(defn ->history
  "Turns op maps into a jepsen.history. Ops whose :f is in drop-fs are left
  out first. If every op has an integer :index, strictly increasing, those
  indices are kept (a dense history when they are 0..n-1, a sparse one
  otherwise, as after dropping ops); if none has one, dense indices are
  given; anything else is an error."
  [ops drop-fs]
  (let [ops     (vec (remove (comp (set drop-fs) :f) ops))
        indices (map :index ops)]
    (cond (every? nil? indices)
          (h/history ops {:dense-indices? true})

          (and (every? integer? indices)
               (or (empty? indices) (apply < indices)))
          (if (= (vec indices) (vec (range (count ops))))
            (h/history ops {:dense-indices? true})
            (h/history ops {:have-indices? true}))

          :else
          (throw (ex-info "ops must all have integer, strictly increasing :index, or none"
                          {:type    ::bad-indices
                           :example (first (remove (comp integer? :index) ops))})))))

;; The test map

(defn sub-via
  "The test's :sub-via: as given, or #{:assign :subscribe} for a history
  with a :subscribe op and #{:assign} for one without."
  [history opts]
  (or (:sub-via opts)
      (if (some (comp #{:subscribe} :f) history)
        #{:assign :subscribe}
        #{:assign})))

(defn test-map
  "The parts of a Jepsen test that jepsen.tests.kafka/checker reads: :name
  and :start-time (store/path! builds its output directory from them),
  :sub-via and :ww-deps (which anomalies are allowed, the graph), :all-errors
  (condense-error), and, for its plots only, :history, :concurrency and
  :plot."
  [history opts]
  (let [procs (->> history (map :process) (filter integer?))]
    {:name        "weir-sim"
     :start-time  "check"
     :sub-via     (sub-via history opts)
     :txn?        false
     :ww-deps     (:ww-deps opts)
     :all-errors  (:all-errors opts)
     :concurrency (if (seq procs) (inc (reduce max procs)) 1)
     :history     history
     :plot        {}}))

;; Results

(defn plain
  "Records (jepsen.history.Op and friends) as plain maps, so the result file
  reads back with any EDN reader."
  [x]
  (walk/postwalk (fn [x] (if (record? x) (into {} x) x)) x))

(defn root-cause
  "Unwraps ExecutionExceptions (from futures) and compiler wrappers down to
  the exception that says what went wrong, preferring one with ex-data."
  [^Throwable t]
  (loop [t t]
    (let [c (.getCause t)]
      (cond (nil? c)                        t
            (instance? ExecutionException t) (recur c)
            (ex-data t)                      t
            :else                            (recur c)))))

(defn error-result
  "A {:valid? :unknown} result for an exception thrown at stage."
  [stage ^Throwable t]
  (let [c (root-cause t)]
    {:valid? :unknown
     :stage  stage
     :error  (cond-> {:class   (.getName (class c))
                      :message (.getMessage c)}
               (ex-data c) (assoc :data (plain (ex-data c))))}))

(defn check-history!
  "Checks one history file. Returns the checker's result, or a {:valid?
  :unknown} map saying which stage (:read, :history, :check) threw what."
  [^File file opts]
  (let [out-dir (io/file (str file ".jepsen.d"))]
    (.mkdirs out-dir)
    ; Log (Jepsen's and Elle's info lines) to the store directory, not stdout.
    (unilog/start-logging!
      {:level     "info"
       :console   false
       :appenders [{:appender :file
                    :encoder  :pattern
                    :pattern  "%d{ISO8601}\t%p\t[%t] %c: %m%n"
                    :file     (.getCanonicalPath (io/file out-dir "jepsen.log"))}]})
    (let [stage   (volatile! :read)]
      (try
        (let [ops     (read-ops file)
              _       (vreset! stage :history)
              history (->history ops (:drop-f opts))
              ; Pairs every invocation with its completion now, so that an
              ; unpairable history is reported as such, before the checker
              ; runs into the same error inside one of its futures.
              _       (h/ensure-pair-index history)
              _       (vreset! stage :check)
              test    (test-map history opts)
              skip    (fn [& _] :skipped-no-plots)]
          ; jepsen.store/path! puts the checker's files under
          ; base-dir/:name/:start-time; base-dir is "store" in the working
          ; directory, so point it at HISTORY.jepsen.d.
          (-> (with-redefs [store/base-dir (.getPath out-dir)]
                (if (:plots opts)
                  (checker/check (kafka/checker) test history {})
                  (with-redefs [kafka/plot-unseen!        skip
                                kafka/plot-realtime-lags! skip]
                    (checker/check (kafka/checker) test history {}))))
              (assoc :sub-via (:sub-via test))))
        (catch Throwable t
          (error-result @stage t))))))

(defn anomaly-examples
  "One example (the first listed) of each anomaly in a result."
  [result]
  (into (sorted-map)
        (for [t (:error-types result)
              :let [e (get result t)]]
          [t (if (and (map? e) (contains? e :errs))
               (first (:errs e))
               e)])))

(defn summary-line
  [file result]
  (let [v (:valid? result)]
    (str file
         " valid=" (cond (true? v) "true" (false? v) "false" :else "unknown")
         " sub-via=" (str/join "," (map name (sort (:sub-via result))))
         " anomalies=" (vec (:error-types result))
         (when (seq (:bad-error-types result))
           (str " invalidating=" (vec (:bad-error-types result))))
         (when-let [e (:error result)]
           (str " error=" (pr-str (:stage result)) " "
                (pr-str (or (get-in e [:data :type]) (:class e))))))))

;; CLI

(defn parse-args
  [args]
  (loop [args args
         opts {:drop-f  #{}
               :files   []}]
    (if-let [[a & more] (seq args)]
      (case a
        "--sub-via"    (recur (next more)
                              (assoc opts :sub-via
                                     (->> (str/split (first more) #",")
                                          (remove str/blank?)
                                          (map keyword)
                                          set)))
        "--drop-f"     (recur (next more)
                              (assoc opts :drop-f
                                     (->> (str/split (first more) #",")
                                          (remove str/blank?)
                                          (map keyword)
                                          set)))
        "--ww-deps"    (recur more (assoc opts :ww-deps true))
        "--all-errors" (recur more (assoc opts :all-errors true))
        "--plots"      (recur more (assoc opts :plots true))
        (if (str/starts-with? a "--")
          (throw (ex-info (str "unknown option " a) {:type ::usage}))
          (recur more (update opts :files conj a))))
      opts)))

(defn -main
  [& args]
  (let [opts    (parse-args args)
        _       (when (empty? (:files opts))
                  (binding [*out* *err*]
                    (println "usage: weir.jepsen-check [--sub-via assign,subscribe] [--ww-deps] [--all-errors] [--drop-f F,...] [--plots] HISTORY.edn..."))
                  (System/exit 64))
        results (doall
                  (for [f (:files opts)]
                    (let [file   (io/file f)
                          result (plain (check-history! file opts))
                          out    (io/file (str f ".jepsen.edn"))]
                      (with-open [w (io/writer out)]
                        (binding [*out* w
                                  *print-length* nil
                                  *print-level* nil]
                          (pprint result)))
                      (println (summary-line f result))
                      (doseq [[t e] (anomaly-examples result)]
                        (println "  " t (binding [*print-length* 8
                                                  *print-level* 6]
                                          (pr-str e))))
                      (when-let [e (:error result)]
                        (println "  " (binding [*print-length* 6
                                                *print-level* 3]
                                        (if-let [d (:data e)]
                                          (pr-str d)
                                          (pr-str (:message e))))))
                      (flush)
                      result)))
        valids  (set (map :valid? results))]
    (shutdown-agents)
    (System/exit (cond (contains? valids false) 1
                       (every? true? valids)    0
                       :else                    2))))
