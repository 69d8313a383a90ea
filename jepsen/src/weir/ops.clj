(ns weir.ops
  "The operations of jepsen.tests.kafka's queue workload, carried out
  against weir's HTTP gateway: plain maps in, completed maps out, no Jepsen
  needed (jepsen.weir.client wraps this for Jepsen; CI runs it directly,
  weir.smoke). A key is a topic of its own (\"jepsen-<key>\", one
  partition, the cluster's default replication), made on first use.
  Consumers use :assign: the state keeps each assigned key's position and
  long-polls from it; weir's gateway has no group membership yet, so
  :subscribe fails definitely (run the workload with :sub-via #{:assign})."
  (:require [weir.gateway :as g]))

(def http-port 8080)

(defn key->topic [k] (str "jepsen-" k))

(defn- ensure-topic!
  "Makes the key's topic once per client; true when it exists."
  [{:keys [base topics]} k]
  (or (contains? @topics k)
      (let [r (g/create-topic! base (key->topic k) 1)]
        (when (= :ok (:outcome r))
          (swap! topics conj k)
          true))))

(defn- send-one
  "One [:send k v] micro-op: [outcome completed-mop error]."
  [client [_ k v]]
  (if-not (ensure-topic! client k)
    [:info nil :topic-unavailable]
    (let [r (g/send! (:base client) (key->topic k) 0 v)]
      (case (:outcome r)
        :ok [:ok [:send k [(:offset r) v]] nil]
        [(:outcome r) nil (:error r)]))))

(defn- poll-all
  "Fetches every assigned key from its position. Returns [positions' {k
  [[offset v] ...]}] or nil if any fetch failed (then nothing moves)."
  [{:keys [base positions]} poll-ms]
  (reduce (fn [[pos read] k]
            (let [r (g/fetch base (key->topic k) 0 (get pos k 0) {:wait-ms poll-ms})]
              (cond
                (= :ok (:outcome r))
                [(assoc pos k (:next_offset r))
                 (cond-> read
                   (seq (:records r))
                   (assoc k (mapv (fn [rec] [(:offset rec) (parse-long (:value rec))])
                                  (:records r))))]
                ;; A key nobody has written yet: nothing to read.
                (= "UNKNOWN_TOPIC" (get-in r [:error :code])) [pos read]
                :else (reduced nil))))
          [@positions {}]
          (keys @positions)))

(defn- txn!
  "Runs the micro-ops in order. A failed send ends the op: :fail if nothing
  before it happened and it definitely did not, else :info."
  [client op]
  (loop [mops (:value op), done []]
    (if-let [[f :as mop] (first mops)]
      (case f
        :send (let [[outcome completed error] (send-one client mop)]
                (if (= :ok outcome)
                  (recur (rest mops) (conj done completed))
                  (assoc op :type (if (and (= :fail outcome) (empty? done)) :fail :info)
                            :error error)))
        :poll (if-let [[pos read] (poll-all client (:poll-ms op 100))]
                (do (reset! (:positions client) pos)
                    (recur (rest mops) (conj done [:poll read])))
                (assoc op :type (if (empty? done) :fail :info) :error :poll-failed)))
      (assoc op :type :ok :value done))))

(defn open
  "A consumer-and-producer's state against the gateway at base."
  [base]
  {:base base, :topics (atom #{}), :positions (atom {})})

(defn invoke!
  "Carries out one operation: :send, :poll and :txn (micro-ops [:send k v]
  and [:poll]), :assign (keys; :seek-to-beginning? rewinds them),
  :subscribe (unsupported: :fail) and :crash (forgets positions: :info)."
  [state op]
  (case (:f op)
    (:send :poll :txn) (txn! state op)
    :assign (do (swap! (:positions state)
                       (fn [pos]
                         (into {} (for [k (:value op)]
                                    [k (if (:seek-to-beginning? op) 0 (get pos k 0))]))))
                (assoc op :type :ok))
    :subscribe (assoc op :type :fail :error :subscribe-unsupported)
    :crash (do (reset! (:positions state) {})
               (assoc op :type :info))))
