(ns weir.clock
  "Per-broker clock steps for the Jepsen suite's :broker-clock fault, without
  Jepsen: how far to step a broker's wall clock (as deploy/nemesis does: an
  NTP step of seconds, a misset clock of up to two hours, or a whole day,
  either way) and the libfaketime timestamp-file line that sets it.
  jepsen.weir.db runs each broker under libfaketime reading that file
  (FAKETIME_TIMESTAMP_FILE, re-read every second; monotonic clocks left
  alone, as under an NTP step), and jepsen.weir.nemesis writes it. Only the
  broker is stepped: the node's clock and its etcd member's stay true.")

(def day-seconds 86400)

(defn step-seconds
  "A clock step in seconds, non-zero, drawn from `rnd` (a java.util.Random):
  1 to 120 s, 600 s to two hours, or a day; forwards or backwards."
  [^java.util.Random rnd]
  (let [magnitude (case (.nextInt rnd 3)
                    0 (+ 1 (.nextInt rnd 120))
                    1 (+ 600 (.nextInt rnd 7200))
                    day-seconds)]
    (if (.nextBoolean rnd) magnitude (- magnitude))))

(defn faketime-line
  "What the libfaketime timestamp file holds for a clock `secs` seconds off
  the true time: a relative offset, \"+0\" for none."
  [secs]
  (str (if (neg? secs) "-" "+") (Math/abs (long secs))))

(defn skew-op
  "A nemesis operation stepping the broker clock of one node of `nodes`,
  chosen by `rnd`: {node seconds}."
  [^java.util.Random rnd nodes]
  (let [nodes (vec nodes)
        node  (nth nodes (.nextInt rnd (count nodes)))]
    {:type :info, :f :skew-broker-clock, :value {node (step-seconds rnd)}}))

(def reset-op
  "The nemesis operation that puts every broker's clock back."
  {:type :info, :f :reset-broker-clock, :value nil})
