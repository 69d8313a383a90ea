(ns weir.smoke
  "Runs jepsen.tests.kafka-shaped operations through weir.ops (the code the
  Jepsen client runs) against a live cluster's HTTP gateways, then checks
  what was acknowledged against what was polled (by an assigned poller,
  and by two members of a consumer group together) and against a final
  read with weir.check: what CI runs (no Jepsen needed).

    lein with-profile debian run -m weir.smoke http://127.0.0.1:8080,http://127.0.0.1:8082 300"
  (:require [clojure.string :as str]
            [weir.check :as check]
            [weir.gateway :as g]
            [weir.ops :as ops]))

(def key-count 3)

(defn- sender
  "Sends values from, from+step, ... below n, each to key (mod v key-count),
  one :send op at a time; returns the acknowledged ones."
  [state process from step n]
  (vec (for [v (range from n step)
             :let [k  (mod v key-count)
                   op (ops/invoke! state {:f :send :value [[:send k v]]})]
             :when (= :ok (:type op))
             :let [[_ _ [offset value]] (first (:value op))]]
         {:process process :partition k :offset offset :value value})))

(defn- poller
  "Assigns every key, then polls until it has read `wanted` values or a
  minute has passed. Returns {key [[offset value] ...]} in read order."
  [state wanted]
  (ops/invoke! state {:f :assign :value (range key-count)})
  (let [deadline (+ (System/currentTimeMillis) 60000)]
    (loop [reads {}]
      (if (or (<= wanted (reduce + (map count (vals reads))))
              (< deadline (System/currentTimeMillis)))
        reads
        (let [op (ops/invoke! state {:f :poll :value [[:poll]] :poll-ms 200})]
          (recur (if (= :ok (:type op))
                   (merge-with into reads (second (first (:value op))))
                   reads)))))))

(defn- subscriber
  "After delay-ms, subscribes to every key as a member of the group, then
  polls until the members together (seen, shared) have read `wanted`
  values or a minute has passed, and leaves. Returns {key [[offset value]
  ...]} in read order."
  [state seen wanted delay-ms]
  (Thread/sleep (long delay-ms))
  (let [op (ops/invoke! state {:f :subscribe :value (range key-count)})]
    (when-not (= :ok (:type op))
      (throw (ex-info "subscribing failed" op))))
  (let [deadline (+ (System/currentTimeMillis) 60000)]
    (loop [reads {}]
      (if (or (<= wanted (count @seen))
              (< deadline (System/currentTimeMillis)))
        (do (ops/invoke! state {:f :assign :value []})
            reads)
        (let [op   (ops/invoke! state {:f :poll :value [[:poll]] :poll-ms 200})
              read (when (= :ok (:type op)) (second (first (:value op))))]
          (swap! seen into (for [[_ pairs] read, [_ v] pairs] v))
          (recur (merge-with into reads read)))))))

(defn- union
  "The records several readers read, each [offset value] once, by offset."
  [reads]
  (into {} (for [[k pairs] (apply merge-with into reads)]
             [k (vec (sort-by first (distinct pairs)))])))

(defn smoke!
  "Two senders on different gateways; one poller of assigned keys; two
  members of a consumer group on two gateways, the second joining a
  moment later (a rebalance); n values in all."
  [urls n]
  (let [state   #(ops/open (nth urls (mod % (count urls))))
        polled  (future (poller (state 2) n))
        seen    (atom #{})
        members [(future (subscriber (state 0) seen n 0))
                 (future (subscriber (state 1) seen n 2000))]
        senders [(future (sender (state 0) 0 0 2 n))
                 (future (sender (state 1) 1 1 2 n))]
        acked   (vec (mapcat deref senders))
        polled  @polled
        members (mapv deref members)
        final   (into {} (for [k (range key-count)]
                           [k (mapv (fn [[o v]] [o (parse-long v)])
                                    (g/read-all (first urls) (ops/key->topic k) 0))]))]
    {:polls  (check/check acked polled)
     :group  (assoc (check/check acked (union members))
                    :per-member (mapv #(reduce + (map count (vals %))) members))
     :final  (check/check acked final)}))

(defn -main
  [& [urls n]]
  (let [urls (str/split (or urls "http://127.0.0.1:8080") #",")
        n    (Long/parseLong (or n "300"))
        {:keys [polls group final] :as result} (smoke! urls n)
        line (fn [label r]
               (println (format "%s: %d acknowledged, %d read; lost %d, duplicated %d, inconsistent %d, out of order %d/%d"
                                label (:acked r) (:read r) (count (:lost r)) (count (:duplicated r))
                                (count (:inconsistent r)) (count (:nonmonotonic-read r))
                                (count (:nonmonotonic-send r)))))]
    (line "polls" polls)
    (line "group members, together" group)
    (println (format "group members read %s (a record handed out but not yet committed when its partition moves is read again: at least once)"
                     (str/join " and " (:per-member group))))
    (line "final read" final)
    (let [ok? (and (:valid? polls) (:valid? group) (:valid? final) (= n (:acked final)))]
      (println (if ok? "smoke: valid" (str "smoke: INVALID " (pr-str result))))
      (shutdown-agents)
      (System/exit (if ok? 0 1)))))
