(ns weir.ops
  "The operations of jepsen.tests.kafka's queue workload, carried out
  against weir's HTTP gateway: plain maps in, completed maps out, no Jepsen
  needed (jepsen.weir.client wraps this for Jepsen; CI runs it directly,
  weir.smoke). A key is a topic of its own (\"jepsen-<key>\", one
  partition, the cluster's default replication), made on first use.
  Consumers either :assign keys (the state keeps each key's position and
  long-polls from it) or :subscribe to them as members of one consumer
  group (the gateway keeps a consumer instance that takes part in
  rebalances and auto-commits what each poll handed out)."
  (:require [weir.gateway :as g]))

(def http-port 8080)

(def group
  "The consumer group every subscriber joins."
  "jepsen")

(def subscription
  "How subscribers join: a session the nemesis's pauses can outlast, and
  an instance that leaves the group soon after its client crashed."
  {:auto-commit? true :session-timeout-ms 6000 :idle-timeout-ms 10000})

(defn key->topic [k] (str "jepsen-" k))

(defn topic->key
  "The key a topic holds, or nil for a topic that is not a key's."
  [topic]
  (when (and (string? topic) (.startsWith ^String topic "jepsen-"))
    (parse-long (subs topic 7))))

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

(defn- poll-subscribed
  "One poll of the client's consumer instance. Returns [nil {k [[offset v]
  ...]}], or [:gone] if the gateway no longer has the instance (deleted,
  expired, restarted) and nil on any other failure."
  [{:keys [base consumer]} poll-ms]
  (let [r (g/consumer-poll base group @consumer {:wait-ms poll-ms})]
    (cond
      (= :ok (:outcome r))
      [nil (reduce (fn [read {:keys [topic offset value]}]
                     (if-let [k (topic->key topic)]
                       (update read k (fnil conj []) [offset (parse-long value)])
                       read))
                   {}
                   (:records r))]
      (= "UNKNOWN_CONSUMER" (get-in r [:error :code])) [:gone]
      :else nil)))

(defn- poll!
  "Polls the subscription if there is one, else the assigned keys: [read]
  or nil when the poll failed (then no position moved)."
  [client poll-ms]
  (if @(:consumer client)
    (let [[gone read] (poll-subscribed client poll-ms)]
      (when (= :gone gone) (reset! (:consumer client) nil))
      (when-not gone (when read [read])))
    (when-let [[pos read] (poll-all client poll-ms)]
      (reset! (:positions client) pos)
      [read])))

(defn- unsubscribe!
  "Leaves the group, if subscribed (best effort: an instance that cannot
  be deleted expires on its own)."
  [{:keys [base consumer]}]
  (when-let [id @consumer]
    (g/unsubscribe! base group id)
    (reset! consumer nil)))

(defn- subscribe!
  "Joins the group for the keys' topics (made first if need be)."
  [client op]
  (unsubscribe! client)
  (reset! (:positions client) {})
  (if-not (every? #(ensure-topic! client %) (:value op))
    (assoc op :type :fail :error :topic-unavailable)
    (let [r (g/subscribe! (:base client) group (map key->topic (:value op)) subscription)]
      (case (:outcome r)
        :ok (do (reset! (:consumer client) (:consumer r))
                (assoc op :type :ok))
        (assoc op :type (:outcome r) :error (:error r))))))

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
        :poll (if-let [[read] (poll! client (:poll-ms op 100))]
                (recur (rest mops) (conj done [:poll read]))
                (assoc op :type (if (empty? done) :fail :info) :error :poll-failed)))
      (assoc op :type :ok :value done))))

(defn open
  "A consumer-and-producer's state against the gateway at base."
  [base]
  {:base base, :topics (atom #{}), :positions (atom {}), :consumer (atom nil)})

(defn invoke!
  "Carries out one operation: :send, :poll and :txn (micro-ops [:send k v]
  and [:poll]), :assign (keys; :seek-to-beginning? rewinds them),
  :subscribe (keys, as a member of the group) and :crash (forgets
  positions and the subscription without leaving the group, as a crashed
  client would: its instance expires on its own; :info)."
  [state op]
  (case (:f op)
    (:send :poll :txn) (txn! state op)
    :assign (do (unsubscribe! state)
                (swap! (:positions state)
                       (fn [pos]
                         (into {} (for [k (:value op)]
                                    [k (if (:seek-to-beginning? op) 0 (get pos k 0))]))))
                (assoc op :type :ok))
    :subscribe (subscribe! state op)
    :crash (do (reset! (:positions state) {})
               (reset! (:consumer state) nil)
               (assoc op :type :info))))
