(ns weir.check
  "A small pure-Clojure checker for a queue history, without Jepsen. The
  properties are jepsen.tests.kafka's (lost-write, duplicate,
  inconsistent-offsets, nonmonotonic-poll, nonmonotonic-send); weir's
  simulator checks the same ones in Rust (sim/src/checker).")

(defn- offsets-of
  "value -> sorted set of [partition offset] it was read at."
  [reads]
  (reduce-kv (fn [m p pairs]
               (reduce (fn [m [o v]] (update m v (fnil conj (sorted-set)) [p o]))
                       m pairs))
             {} reads))

(defn check
  "acked: acknowledged sends (acks=all), in the order each completed:
  [{:process :partition :offset :value}]. reads: {partition [[offset value]
  ...]}, each partition's records in the order they were read (a final read
  from offset 0, say). Returns {:valid? bool, :lost [...], :duplicated
  [...], :inconsistent [...], :nonmonotonic-read [...], :nonmonotonic-send
  [...], :acked n, :read n}."
  [acked reads]
  (let [at (offsets-of reads)
        ;; Acknowledged, never read.
        lost (vec (for [{:keys [value] :as a} acked
                        :when (not (contains? at value))]
                    a))
        ;; One value at two places.
        duplicated (vec (for [[v places] at
                              :when (< 1 (count places))]
                          {:value v :at (vec places)}))
        ;; Two values at one offset: across reads, or against the ack.
        by-offset (reduce-kv (fn [m p pairs]
                               (reduce (fn [m [o v]] (update m [p o] (fnil conj #{}) v))
                                       m pairs))
                             {} reads)
        inconsistent (vec (concat
                            (for [[po vs] by-offset :when (< 1 (count vs))]
                              {:at po :values vs})
                            (for [{:keys [partition offset value]} acked
                                  :let [vs (get by-offset [partition offset])]
                                  :when (and vs (not (contains? vs value)))]
                              {:at [partition offset] :acked value :read vs})))
        ;; Within one read of a partition, offsets only go up.
        nonmonotonic-read (vec (for [[p pairs] reads
                                     [[o1 _] [o2 _]] (partition 2 1 pairs)
                                     :when (<= o2 o1)]
                                 {:partition p :offsets [o1 o2]}))
        ;; One producer's sends to one partition, acknowledged in order,
        ;; land at rising offsets.
        nonmonotonic-send (vec (for [[_ sends] (group-by (juxt :process :partition) acked)
                                     [a b] (partition 2 1 sends)
                                     :when (<= (:offset b) (:offset a))]
                                 {:first a :then b}))]
    {:valid?            (every? empty? [lost duplicated inconsistent nonmonotonic-read nonmonotonic-send])
     :acked             (count acked)
     :read              (reduce + (map count (vals reads)))
     :lost              lost
     :duplicated        duplicated
     :inconsistent      inconsistent
     :nonmonotonic-read nonmonotonic-read
     :nonmonotonic-send nonmonotonic-send}))
